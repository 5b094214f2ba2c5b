"""The model settings dialog: teacher (local GGUF, Gemini or an OpenAI-compatible server), student and embedder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..backends import secrets
from ..backends.bundled import BUNDLED_NAMES, ModelFileError, bundled_embedder_path, bundled_local_teacher_path
from ..backends.model_probe import (
    ServerCheck,
    StudentCheck,
    StudentServerCheck,
    check_student,
    check_student_server,
    probe_openai_teacher,
    probe_teacher,
)
from ..core.settings import RunSettings
from ..core.settings_check import server_url_problem, settings_problems
from .models_list import ModelListPanel
from .tasks import TaskRunner

# Editable: the list only suggests names; any model id the API knows can be typed.
GEMINI_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro",
                 "gemini-3-flash-preview", "gemini-3-pro-preview")
BUNDLED_STUDENT = BUNDLED_NAMES["student"]  # the embedded models' names: one home, backends.bundled
BUNDLED_TEACHER = BUNDLED_NAMES["teacher"]
BUNDLED_EMBEDDER = BUNDLED_NAMES["embedder"]
OPENAI_SERVERS = "Ollama, vLLM, LM Studio, llama.cpp"
# Where a key comes from when it is not in the keychain (the first variable is the one we suggest).
KEY_ENV_VARS = {"gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "openai": ("OPENAI_API_KEY",),
                "huggingface": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
PROMPT_FORMATS = (("completion", "Completion: the exact prompt on /v1/completions (as in-process)"),
                  ("chat", "Chat: the server's chat template on /v1/chat/completions"))
# How this dialog names a setting in a problem (core.settings_check words the rule): box and field, as shown.
# Its problems are those of the settings named here (the ones it edits).
DIALOG_NAMES = {
    "teacher": "Teacher", "teacher=openai": "The teacher on an OpenAI-compatible server",
    "teacher_gguf": "Local teacher › GGUF file", "teacher_model": "Gemini › Model",
    "teacher_base_url": "Gemini › Base URL", "teacher_openai_base_url": "OpenAI-compatible server › Base URL",
    "teacher_openai_model": "OpenAI-compatible server › Model",
    "teacher_concurrency": "Requests and cost › Concurrent requests",
    "price_in_per_million": "USD per million tokens › input",
    "price_out_per_million": "USD per million tokens › output",
    "student_backend": "Student", "student_backend=openai": "The student on an OpenAI-compatible server",
    "student_gguf": "Student › GGUF file", "student_n_ctx": "Student › Context size",
    "student_threads": "Student › Threads",
    "student_base_url": "Student server › Base URL", "student_model": "Student server › Model",
    "student_concurrency": "Student server › Concurrent requests",
    "student_prompt_format": "Student server › Prompt format", "student_top_logprobs": "Student server › Top logprobs",
    "embedder": "Embedder › Other model folder",
}


def keychain_available() -> bool:
    """Whether keyring found a usable OS keychain (its `fail` backend means none)."""
    try:
        import keyring
        from keyring.backends import fail
        return not isinstance(keyring.get_keyring(), fail.Keyring)
    except Exception:
        return False


# ---------------------------------------------------------------------------
# Background checks
# ---------------------------------------------------------------------------
def _redacted_check(fn: Callable[[], Any], hide: tuple[str, ...]) -> Callable[[Any], Any]:
    """A task for TaskRunner that runs one check function; error texts are redacted of `hide` (a typed API key)
    before they leave the worker thread."""
    def run(_progress: Any) -> Any:  # on the worker thread
        try:
            return fn()
        except Exception as exc:
            message = str(exc).strip() or type(exc).__name__
            raise RuntimeError(secrets.redact(message, hide)) from None
    return run


# ---------------------------------------------------------------------------
# An API key field (one per place a key is asked for; several may share a service)
# ---------------------------------------------------------------------------
class ApiKeyField(QWidget):
    """A password field with "Save to keychain" and "Remove", and a line saying which key is in use.
    The key goes to the OS keychain (backends/secrets.py), never into the settings."""

    message = Signal(str)   # words for the user after a save or a removal
    changed = Signal()      # the stored key changed: fields of the same service refresh

    def __init__(self, service: str, optional_note: str = "", parent: QWidget | None = None,
                 server: QLineEdit | None = None) -> None:
        """`server`: the field holding the server this key is for; the key is then saved, read and removed for
        that server only (a keychain entry per server origin), so it is never sent to another server."""
        super().__init__(parent)
        self.service = service
        self.server_field = server
        self.optional_note = optional_note
        self.env_var = KEY_ENV_VARS[service][0]
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.edit = QLineEdit()
        self.edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.edit.setPlaceholderText("paste a key to save it in the OS keychain")
        self.save_btn = QPushButton("Save to keychain")
        self.save_btn.clicked.connect(self.save)
        self.forget_btn = QPushButton("Remove")
        self.forget_btn.setToolTip("Delete the key stored in the OS keychain")
        self.forget_btn.clicked.connect(self.forget)
        row.addWidget(self.edit, 1)
        row.addWidget(self.save_btn)
        row.addWidget(self.forget_btn)
        layout.addLayout(row)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.refresh()

    def typed(self) -> str:
        return self.edit.text().strip()

    def server(self) -> str | None:
        return self.server_field.text().strip() or None if self.server_field is not None else None

    def status_text(self) -> str:
        source = secrets.api_key_source(self.service, self.server())
        have_keychain = keychain_available()
        if source is not None and source.startswith("environment"):
            text = f"Key in use: from the {source}."
            if have_keychain:
                text += " A key saved here is stored but the environment variable takes precedence."
        elif source is not None:
            text = "Key in use: from the OS keychain (service 'pld-desktop')" + (
                f", saved for {secrets.server_origin(self.server())} only." if self.server() else ".")
        else:
            text = "No key is set." + (f" {self.optional_note}" if self.optional_note else "")
        if not have_keychain:
            text += (" No OS keychain is available on this system, so a key cannot be saved here: set the "
                     f"{self.env_var} environment variable before starting PLD Desktop.")
        return text

    def refresh(self) -> None:
        self.status.setText(self.status_text())
        have_keychain = keychain_available()
        self.save_btn.setEnabled(have_keychain)
        self.forget_btn.setEnabled(have_keychain
                                   and secrets.api_key_source(self.service, self.server()) == "OS keychain")
        if not have_keychain:
            self.save_btn.setToolTip(f"No OS keychain is available; set {self.env_var} instead")

    def store_typed(self) -> None:
        """Save the typed key (raises SecretStoreError or ValueError with a message free of the key)."""
        key = self.edit.text()
        try:
            if self.server_field is not None and not self.server():
                raise ValueError("enter the server's base URL first: the key is saved for that server only")
            secrets.set_api_key(key, self.service, self.server())
        except (secrets.SecretStoreError, ValueError) as exc:
            # secrets' messages name GEMINI_API_KEY whatever the service; name this service's variable.
            text = secrets.redact(str(exc), [key]).replace(KEY_ENV_VARS["gemini"][0], self.env_var)
            raise type(exc)(text) from None
        self.edit.clear()
        self.changed.emit()

    def save(self) -> None:
        if not self.typed():
            self.message.emit("Paste an API key into the field first.")
            return
        try:
            self.store_typed()
        except (secrets.SecretStoreError, ValueError) as exc:
            self.message.emit(f"The key was not saved: {exc}")
            return
        self.message.emit("The API key is saved in the OS keychain (not in the project).")

    def forget(self) -> None:
        try:
            secrets.delete_api_key(self.service, self.server())
        except secrets.SecretStoreError as exc:
            self.message.emit(str(exc))
            return
        self.changed.emit()
        self.message.emit("The API key was removed from the OS keychain.")


# ---------------------------------------------------------------------------
# The dialog
# ---------------------------------------------------------------------------
class ModelsDialog(QDialog):
    """Edits the model part of a project's RunSettings. API keys never enter the settings: they go to the
    OS keychain (backends/secrets.py) or stay in the environment."""

    def __init__(self, settings: RunSettings, parent: QWidget | None = None, *,
                 project_path: Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.project_path = project_path
        self._original = dataclasses.replace(settings)
        self._task_kind: str | None = None  # "teacher" | "student" | "server" while `runner` runs that check
        self.runner = TaskRunner(self, name="pld-model-check")
        self.runner.succeeded.connect(lambda result: self._on_done(True, result))
        self.runner.failed.connect(lambda message, _exc: self._on_done(False, message))
        self.runner.cancelled.connect(lambda: self._on_done(False, "cancelled by the user"))
        self.last_student_check: StudentCheck | None = None
        self.last_server_check: StudentServerCheck | None = None
        self._build()
        self._load(settings)
        self._refresh_key_status()
        self._update_teacher_mode()
        self._update_student_mode()

    # -- construction -------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_teacher(), "Teacher")
        self.tabs.addTab(self._build_student(), "Student")
        self.tabs.addTab(self._build_embedder(), "Embedder")
        self.tabs.addTab(self._build_local_models(), "On this machine")
        self.tabs.currentChanged.connect(self._tab_shown)
        outer.addWidget(self.tabs, 1)

        busy = QHBoxLayout()
        self.busy_label = QLabel("")
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # a model load or a single call has no measurable steps
        self.busy_bar.setMaximumWidth(180)
        self.cancel_btn = QPushButton("Cancel check")
        self.cancel_btn.setToolTip("Stop waiting; the check finishes in the background and its result is ignored")
        self.cancel_btn.clicked.connect(self.cancel_check)
        busy.addWidget(self.busy_label, 1)
        busy.addWidget(self.busy_bar)
        busy.addWidget(self.cancel_btn)
        outer.addLayout(busy)
        self._show_busy(False)

        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #B71C1C;")
        self.error_label.hide()
        outer.addWidget(self.error_label)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        outer.addWidget(self.buttons)
        self.resize(760, 640)

    def _build_teacher(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.local_radio = QRadioButton("Local GGUF model (offline, free)")
        self.gemini_radio = QRadioButton("Gemini API (needs an API key, paid per token)")
        self.openai_radio = QRadioButton(f"OpenAI-compatible server ({OPENAI_SERVERS})")
        self._mode_group = QButtonGroup(self)
        for b in (self.local_radio, self.gemini_radio, self.openai_radio):
            self._mode_group.addButton(b)
            layout.addWidget(b)
            b.toggled.connect(self._update_teacher_mode)

        self.local_box = QGroupBox("Local teacher")
        form = QFormLayout(self.local_box)
        self.teacher_gguf = QLineEdit()
        self.teacher_gguf.setPlaceholderText(self._bundled_teacher_text())
        form.addRow("GGUF file:", self._path_row(self.teacher_gguf, self._browse_teacher))
        layout.addWidget(self.local_box)

        self.gemini_box = QGroupBox("Gemini")
        form = QFormLayout(self.gemini_box)
        self.gemini_model = QComboBox()
        self.gemini_model.setEditable(True)
        self.gemini_model.addItems(GEMINI_MODELS)
        form.addRow("Model:", self.gemini_model)
        self.gemini_key = ApiKeyField("gemini")
        # The names the rest of the app and the tests use for the Gemini key widgets.
        self.api_key, self.save_key_btn = self.gemini_key.edit, self.gemini_key.save_btn
        self.forget_key_btn, self.key_status = self.gemini_key.forget_btn, self.gemini_key.status
        form.addRow("API key:", self.gemini_key)
        self.base_url = QLineEdit()
        self.base_url.setPlaceholderText("default: Google's endpoint (set only for a proxy or a test server)")
        form.addRow("Base URL:", self.base_url)
        layout.addWidget(self.gemini_box)

        self.openai_box = QGroupBox("OpenAI-compatible server")
        form = QFormLayout(self.openai_box)
        self.openai_url = QLineEdit()
        self.openai_url.setPlaceholderText("e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8000/v1 (vLLM)")
        self.openai_url.setToolTip("The server's API address; a bare host:port gets /v1 appended.\n"
                                   "Ollama :11434, vLLM :8000, LM Studio :1234, llama.cpp server :8080")
        form.addRow("Base URL:", self.openai_url)
        self.openai_model = QComboBox()
        self.openai_model.setEditable(True)
        line = self.openai_model.lineEdit()
        if line is not None:  # always, for an editable combo box
            line.setPlaceholderText("the served model's name; Test connection lists them")
        form.addRow("Model:", self.openai_model)
        self.openai_key = ApiKeyField("openai", "Local servers (Ollama, llama.cpp, LM Studio) need none.",
                                      server=self.openai_url)
        self.openai_url.textChanged.connect(self.openai_key.refresh)
        form.addRow("API key:", self.openai_key)
        layout.addWidget(self.openai_box)

        # Both remote teachers take requests in parallel and may cost money.
        self.remote_box = QGroupBox("Requests and cost")
        form = self._remote_form = QFormLayout(self.remote_box)
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, 64)
        self.concurrency.setMaximumWidth(120)
        self.concurrency.setToolTip("Requests in flight at once; lower it if you hit the per-minute quota "
                                    "or the server runs out of memory")
        form.addRow("Concurrent requests:", self.concurrency)
        prices = QHBoxLayout()
        self.price_in = self._price_box()
        self.price_out = self._price_box()
        prices.addWidget(QLabel("input"))
        prices.addWidget(self.price_in)
        prices.addWidget(QLabel("output (incl. thinking)"))
        prices.addWidget(self.price_out)
        prices.addStretch(1)
        form.addRow("USD per million tokens:", prices)
        self.price_note = QLabel("A server on your own machine costs nothing: set both prices to $0 so the "
                                 "run's cost figures stay true.")
        self.price_note.setWordWrap(True)
        form.addRow("", self.price_note)
        layout.addWidget(self.remote_box)

        for field in (self.gemini_key, self.openai_key):
            field.message.connect(self.teacher_result_message)
            field.changed.connect(self._refresh_key_status)

        test_row = QHBoxLayout()
        self.test_btn = QPushButton("Test connection")
        self.test_btn.setToolTip("One tiny real call to the teacher chosen above")
        self.test_btn.clicked.connect(self.test_connection)
        test_row.addWidget(self.test_btn)
        test_row.addStretch(1)
        layout.addLayout(test_row)
        self.teacher_result = self._result_label()
        layout.addWidget(self.teacher_result)
        layout.addStretch(1)
        return page

    def _build_student(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.student_llama_radio = QRadioButton("In-process GGUF (llama.cpp)")
        self.student_server_radio = QRadioButton(f"OpenAI-compatible server ({OPENAI_SERVERS})")
        self._student_group = QButtonGroup(self)
        for b in (self.student_llama_radio, self.student_server_radio):
            self._student_group.addButton(b)
            layout.addWidget(b)
            b.toggled.connect(self._update_student_mode)

        self.student_local_box = QGroupBox("Student (the small model that follows the rules)")
        form = QFormLayout(self.student_local_box)
        self.student_gguf = QLineEdit()
        self.student_gguf.setPlaceholderText(BUNDLED_STUDENT)
        form.addRow("GGUF file:", self._path_row(self.student_gguf, self._browse_student))
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setMaximumWidth(160)
        self.threads.setSpecialValueText("automatic")
        self.threads.setToolTip("CPU threads for the student; automatic lets llama.cpp choose")
        form.addRow("Threads:", self.threads)
        self.n_ctx = QSpinBox()
        self.n_ctx.setRange(512, 262144)
        self.n_ctx.setMaximumWidth(160)
        self.n_ctx.setSingleStep(512)
        self.n_ctx.setSuffix(" tokens")
        self.n_ctx.setToolTip("The rules, the example and the answer must fit; more context costs memory")
        form.addRow("Context size:", self.n_ctx)
        self.check_btn = QPushButton("Load and check")
        self.check_btn.setToolTip("Load the model with these settings and show what it is")
        self.check_btn.clicked.connect(self.check_student)
        form.addRow("", self._left(self.check_btn))
        layout.addWidget(self.student_local_box)

        self.student_server_box = QGroupBox("Student server")
        form = QFormLayout(self.student_server_box)
        self.student_url = QLineEdit()
        self.student_url.setPlaceholderText("e.g. http://127.0.0.1:8080/v1 (llama.cpp server)")
        self.student_url.setToolTip("The server's API address; a bare host:port gets /v1 appended")
        form.addRow("Base URL:", self.student_url)
        self.student_model = QComboBox()
        self.student_model.setEditable(True)
        line = self.student_model.lineEdit()
        if line is not None:  # always, for an editable combo box
            line.setPlaceholderText("optional: the first model the server lists")
        form.addRow("Model:", self.student_model)
        self.student_concurrency = QSpinBox()
        self.student_concurrency.setRange(1, 64)
        self.student_concurrency.setMaximumWidth(120)
        self.student_concurrency.setToolTip("Classifications in flight at once (the server must have that many "
                                            "slots, e.g. llama.cpp's --parallel)")
        form.addRow("Concurrent requests:", self.student_concurrency)
        self.prompt_format = QComboBox()
        for value, text in PROMPT_FORMATS:
            self.prompt_format.addItem(text, value)
        self.prompt_format.setToolTip("Completion sends the exact prompt the in-process student reads (right for "
                                      "a model without a chat template, like Gemma 3 270M); chat lets the server "
                                      "apply the model's chat template")
        form.addRow("Prompt format:", self.prompt_format)
        self.top_logprobs = QSpinBox()
        self.top_logprobs.setRange(1, 200)
        self.top_logprobs.setMaximumWidth(120)
        self.top_logprobs.setToolTip("Next-token alternatives asked per step to score the labels; OpenAI and vLLM "
                                     "allow at most 20, llama.cpp servers more (closer to the in-process scores)")
        form.addRow("Top logprobs:", self.top_logprobs)
        self.student_key = ApiKeyField("openai", "Local servers need none.", server=self.student_url)
        self.student_url.textChanged.connect(self.student_key.refresh)
        self.student_key.message.connect(self._student_message)
        self.student_key.changed.connect(self._refresh_key_status)
        form.addRow("API key:", self.student_key)
        self.server_check_btn = QPushButton("Check server")
        self.server_check_btn.setToolTip("List the server's models and classify one short text, as a run would")
        self.server_check_btn.clicked.connect(self.check_student_server)
        form.addRow("", self._left(self.server_check_btn))
        layout.addWidget(self.student_server_box)

        self.student_result = self._result_label()
        layout.addWidget(self.student_result)
        layout.addStretch(1)
        return page

    def _build_local_models(self) -> QWidget:
        """GGUFs found on this machine (HF cache, LM Studio, Ollama, llama.cpp, added folders), fetch, probe."""
        page = QWidget()
        layout = QVBoxLayout(page)
        self.model_list = ModelListPanel(lambda: self.n_ctx.value(), self.project_path)
        self.model_list.use_as_student.connect(self.use_as_student)
        self.model_list.use_as_teacher.connect(self.use_as_teacher)
        layout.addWidget(self.model_list, 1)
        form = QFormLayout()
        self.hf_key = ApiKeyField("huggingface", "Needed only for gated models (e.g. Google's own Gemma "
                                                 "repositories) after you accept their licence on the Hub.")
        self.hf_key.edit.setPlaceholderText("paste a Hugging Face read token to save it in the OS keychain")
        self.hf_key.message.connect(self.model_list.result.setText)
        form.addRow("Hugging Face token:", self.hf_key)
        layout.addLayout(form)
        return page

    @Slot(int)
    def _tab_shown(self, index: int) -> None:
        if self.tabs.widget(index) is self.model_list.parentWidget() and not self.model_list.models \
                and not self.model_list.busy():
            self.model_list.refresh()

    @Slot(str)
    def use_as_student(self, path: str) -> None:
        self.student_llama_radio.setChecked(True)
        self.student_gguf.setText(path)

    @Slot(str)
    def use_as_teacher(self, path: str) -> None:
        self.local_radio.setChecked(True)
        self.teacher_gguf.setText(path)

    def _build_embedder(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        box = QGroupBox("Embedder (groups similar micro-rules in phase 2)")
        form = QFormLayout(box)
        try:
            where = str(bundled_embedder_path())
        except ModelFileError as exc:
            where = str(exc)
        default = QLabel(f"{BUNDLED_EMBEDDER}\n{where}")
        default.setWordWrap(True)
        default.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Default:", default)
        self.embedder_path = QLineEdit()
        self.embedder_path.setPlaceholderText("leave empty for the bundled model")
        form.addRow("Other model folder:", self._path_row(self.embedder_path, self._browse_embedder))
        note = QLabel("A sentence-transformers model folder on disk. Changing the embedder re-embeds and "
                      "re-clusters the micro-rules on the next phase-2 run (cached per model).")
        note.setWordWrap(True)
        form.addRow("", note)
        layout.addWidget(box)
        layout.addStretch(1)
        return page

    @staticmethod
    def _price_box() -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(0.0, 1000.0)
        box.setDecimals(3)
        box.setSingleStep(0.05)
        box.setPrefix("$")
        return box

    @staticmethod
    def _left(widget: QWidget) -> QWidget:
        """`widget` at its natural width on the left of a form row."""
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(widget)
        layout.addStretch(1)
        return row

    @staticmethod
    def _result_label() -> QLabel:
        label = QLabel("")
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        return label

    @staticmethod
    def _path_row(edit: QLineEdit, browse: Callable[[], None]) -> QWidget:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(edit, 1)
        btn = QPushButton("Browse…")
        btn.clicked.connect(browse)
        layout.addWidget(btn)
        reset = QPushButton("Bundled")
        reset.setToolTip("Use the bundled model")
        reset.clicked.connect(edit.clear)
        layout.addWidget(reset)
        return row

    @staticmethod
    def _bundled_teacher_text() -> str:
        try:
            return f"{BUNDLED_TEACHER}: {bundled_local_teacher_path().name}"
        except ModelFileError:
            return f"{BUNDLED_TEACHER} (not installed)"

    # -- settings in and out ------------------------------------------------------------------------------
    def _load(self, s: RunSettings) -> None:
        {"gemini": self.gemini_radio, "openai": self.openai_radio}.get(s.teacher, self.local_radio).setChecked(True)
        self.teacher_gguf.setText(s.teacher_gguf or "")
        self.gemini_model.setCurrentText(s.teacher_model)
        self.concurrency.setValue(max(1, s.teacher_concurrency))
        self.price_in.setValue(s.price_in_per_million)
        self.price_out.setValue(s.price_out_per_million)
        self.base_url.setText(s.teacher_base_url or "")
        self.openai_url.setText(s.teacher_openai_base_url or "")
        self.openai_model.setCurrentText(s.teacher_openai_model or "")
        (self.student_server_radio if s.student_backend == "openai" else self.student_llama_radio).setChecked(True)
        self.student_gguf.setText(s.student_gguf or "")
        self.threads.setValue(s.student_threads or 0)
        self.n_ctx.setValue(s.student_n_ctx)
        self.student_url.setText(s.student_base_url or "")
        self.student_model.setCurrentText(s.student_model or "")
        self.student_concurrency.setValue(max(1, s.student_concurrency))
        index = self.prompt_format.findData(s.student_prompt_format)
        self.prompt_format.setCurrentIndex(max(0, index))
        self.top_logprobs.setValue(max(1, s.student_top_logprobs))
        self.embedder_path.setText(s.embedder or "")

    def teacher_mode(self) -> str:
        if self.gemini_radio.isChecked():
            return "gemini"
        return "openai" if self.openai_radio.isChecked() else "local"

    def settings(self) -> RunSettings:
        """The settings as edited (every field the dialog does not show is kept as it came in)."""
        return dataclasses.replace(
            self._original,
            teacher=self.teacher_mode(),
            teacher_model=self.gemini_model.currentText().strip() or self._original.teacher_model,
            teacher_gguf=self.teacher_gguf.text().strip() or None,
            teacher_base_url=self.base_url.text().strip() or None,
            teacher_openai_base_url=self.openai_url.text().strip() or None,
            teacher_openai_model=self.openai_model.currentText().strip(),
            teacher_concurrency=self.concurrency.value(),
            price_in_per_million=self.price_in.value(),
            price_out_per_million=self.price_out.value(),
            student_backend="openai" if self.student_server_radio.isChecked() else "llama",
            student_gguf=self.student_gguf.text().strip() or None,
            student_n_ctx=self.n_ctx.value(),
            student_threads=self.threads.value() or None,
            student_base_url=self.student_url.text().strip() or None,
            student_model=self.student_model.currentText().strip() or None,
            student_concurrency=self.student_concurrency.value(),
            student_prompt_format=str(self.prompt_format.currentData()),
            student_top_logprobs=self.top_logprobs.value(),
            embedder=self.embedder_path.text().strip() or None,
        )

    def validation_errors(self) -> list[str]:
        """Problems that would make a run fail at once, for the settings this dialog edits, named by its fields:
        the checks every run makes (core.settings_check, shared with the CLI and the pipeline), so it never
        accepts what a run would refuse. Cheap checks only (no model is loaded, no call made)."""
        return [p.words(DIALOG_NAMES) for p in settings_problems(self.settings()) if p.setting in DIALOG_NAMES]

    def _key_fields(self) -> tuple[ApiKeyField, ...]:
        return (self.gemini_key, self.openai_key, self.student_key, self.hf_key)

    def accept(self) -> None:
        errors = self.validation_errors()
        # A typed key is the user's work: store it rather than drop it, or say why it cannot be stored.
        for field in self._key_fields():
            if not field.typed():
                continue
            try:
                field.store_typed()
            except (secrets.SecretStoreError, ValueError) as exc:
                errors.append(f"API key: {exc} (or clear the key field to close without saving it).")
        self._refresh_key_status()
        if errors:
            self.error_label.setText("\n".join(errors))
            self.error_label.show()
            return
        self._abandon_task()
        self.model_list.abandon()
        super().accept()

    def reject(self) -> None:
        self._abandon_task()
        self.model_list.abandon()
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._abandon_task()
        self.model_list.abandon()
        super().closeEvent(event)

    # -- API keys -------------------------------------------------------------------------------------------
    def _refresh_key_status(self) -> None:
        for field in self._key_fields():
            field.refresh()

    @Slot(str)
    def teacher_result_message(self, text: str) -> None:
        self.teacher_result.setText(text)

    @Slot(str)
    def _student_message(self, text: str) -> None:
        self.student_result.setText(text)

    def _typed_openai_key(self, first: ApiKeyField) -> str:
        """A typed, unsaved OpenAI-compatible key for one check only: only the one typed beside that server's
        address (a key typed for the student's server is never sent to the teacher's, or the reverse)."""
        return first.typed()

    # -- checks in the background ---------------------------------------------------------------------------
    def test_connection(self) -> None:
        settings = self.settings()
        if settings.teacher == "openai":
            problem = server_url_problem("teacher_openai_base_url", self.openai_url.text(), needed_by="teacher=openai")
            if problem:
                self.teacher_result.setText(problem.words(DIALOG_NAMES))
                return
            typed = self._typed_openai_key(self.openai_key)
            what = settings.teacher_openai_model or "the server"
            self._start("teacher", f"Testing {what} at {settings.teacher_openai_base_url}…",
                        lambda: probe_openai_teacher(settings.teacher_openai_base_url or "",
                                                     settings.teacher_openai_model, typed or None),
                        hide=(typed,) if typed else ())
            return
        typed = self.gemini_key.typed()
        if settings.teacher == "gemini" and not typed and secrets.api_key_source("gemini") is None:
            self.teacher_result.setText("No Gemini API key: paste one above, or set GEMINI_API_KEY.")
            return
        what = f"Gemini {settings.teacher_model}" if settings.teacher == "gemini" else "the local teacher"
        typed = typed if settings.teacher == "gemini" else ""
        self._start("teacher", f"Testing {what}…", lambda: probe_teacher(settings, typed or None),
                    hide=(typed,) if typed else ())

    def check_student(self) -> None:
        settings = self.settings()
        self._start("student", "Loading the student model…",
                    lambda: check_student(settings.student_gguf, settings.student_n_ctx, settings.student_threads))

    def check_student_server(self) -> None:
        problem = server_url_problem("student_base_url", self.student_url.text(), needed_by="student_backend=openai")
        if problem:
            self.student_result.setText(problem.words(DIALOG_NAMES))
            return
        settings = self.settings()
        typed = self._typed_openai_key(self.student_key)
        self._start("server", f"Checking the student server at {settings.student_base_url}…",
                    lambda: check_student_server(settings, typed or None), hide=(typed,) if typed else ())

    def busy(self) -> bool:
        return self.runner.busy()

    def _target(self, kind: str) -> QLabel:
        return self.teacher_result if kind == "teacher" else self.student_result

    def _start(self, kind: str, message: str, fn: Callable[[], Any], hide: tuple[str, ...] = ()) -> None:
        if self.runner.busy():
            return
        self._target(kind).setText("")
        self._task_kind = kind
        self.busy_label.setText(message)
        self._show_busy(True)
        self.runner.start(_redacted_check(fn, hide))

    def _on_done(self, ok: bool, result: object) -> None:
        kind, self._task_kind = self._task_kind, None
        self._show_busy(False)
        if kind == "teacher":
            if isinstance(result, ServerCheck):
                self._offer_models(self.openai_model, result.models)
                result = result.describe()
            self.teacher_result.setText(("✔ " if ok else "✘ Failed: ") + str(result))
        elif kind == "server":
            self.last_server_check = result if ok and isinstance(result, StudentServerCheck) else None
            if isinstance(result, StudentServerCheck):
                self._offer_models(self.student_model, result.models)
                self.student_result.setText("✔ " + result.describe())
            else:
                self.student_result.setText(f"✘ Could not use the student server: {result}")
        else:
            self.last_student_check = result if ok and isinstance(result, StudentCheck) else None
            check = self.last_student_check
            self.student_result.setText(check.describe() if check is not None else
                                        f"✘ Could not load the student: {result}")

    @staticmethod
    def _offer_models(combo: QComboBox, models: tuple[str, ...]) -> None:
        """Put the listed models in the combo's list, keeping whatever the user typed."""
        typed = combo.currentText()
        combo.clear()
        combo.addItems(list(models))
        combo.setCurrentText(typed)

    def cancel_check(self) -> None:
        kind = self._task_kind
        self._abandon_task()
        if kind is not None:
            self._target(kind).setText("Cancelled. (A model load or a request in flight cannot be interrupted; "
                                       "it finishes in the background and its result is ignored.)")

    def _abandon_task(self) -> None:
        self.runner.abandon()  # a model load or a request in flight finishes in the background, unheard
        self._task_kind = None
        self._show_busy(False)

    def _show_busy(self, on: bool) -> None:
        for w in (self.busy_label, self.busy_bar, self.cancel_btn):
            w.setVisible(on)
        for name in ("test_btn", "check_btn", "server_check_btn"):
            button = getattr(self, name, None)
            if button is not None:
                button.setEnabled(not on)

    def _update_teacher_mode(self) -> None:
        mode = self.teacher_mode()
        # Only the chosen teacher's settings are shown; the others keep their values for a later switch.
        for box, shown in ((self.local_box, mode == "local"), (self.gemini_box, mode == "gemini"),
                           (self.openai_box, mode == "openai"), (self.remote_box, mode != "local")):
            box.setEnabled(shown)
            box.setVisible(shown)
        self._remote_form.setRowVisible(self.price_note, mode == "openai")
        if getattr(self, "_shown_teacher", mode) != mode:
            self.teacher_result.clear()  # a result about another teacher would mislead
        self._shown_teacher = mode

    def _update_student_mode(self) -> None:
        server = self.student_server_radio.isChecked()
        for box, shown in ((self.student_local_box, not server), (self.student_server_box, server)):
            box.setEnabled(shown)
            box.setVisible(shown)
        if getattr(self, "_shown_student_server", server) != server:
            self.student_result.clear()
        self._shown_student_server = server

    # -- file pickers ---------------------------------------------------------------------------------------
    def _browse_teacher(self) -> None:
        self._pick_gguf(self.teacher_gguf, "Choose the local teacher GGUF")

    def _browse_student(self) -> None:
        self._pick_gguf(self.student_gguf, "Choose the student GGUF")

    def _pick_gguf(self, edit: QLineEdit, title: str) -> None:
        start = edit.text().strip() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, title, start, "GGUF models (*.gguf);;All files (*)")
        if path:
            edit.setText(path)

    def _browse_embedder(self) -> None:
        start = self.embedder_path.text().strip() or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Choose a sentence-transformers model folder", start)
        if path:
            self.embedder_path.setText(path)
