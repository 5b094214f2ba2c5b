"""The model settings dialog: teacher (local GGUF or Gemini, with its API key), student and embedder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QThread, Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QRadioButton, QSpinBox, QTabWidget, QVBoxLayout, QWidget)

from ..backends import secrets
from ..backends.bundled import ModelFileError, bundled_embedder_path, bundled_local_teacher_path
from ..core.settings import RunSettings

# Editable: the list only suggests names; any model id the API knows can be typed.
GEMINI_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro",
                 "gemini-3-flash-preview", "gemini-3-pro-preview")
BUNDLED_STUDENT = "Gemma 3 270M Q4_K_M (bundled)"
BUNDLED_TEACHER = "SmolLM2-135M-Instruct (bundled)"
BUNDLED_EMBEDDER = "all-MiniLM-L6-v2 (bundled)"

# Threads that outlive a closed dialog are kept here until they finish (a running QThread must not be destroyed).
_LIVE_CHECKS: set["_CheckThread"] = set()


# ---------------------------------------------------------------------------
# The checks themselves (plain functions, run on a background thread)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentCheck:
    """What loading a student GGUF told us."""

    path: str
    name: str
    size_bytes: int
    architecture: str
    size_label: str
    n_params: int
    n_ctx_train: int
    n_ctx: int
    has_chat_template: bool
    load_s: float

    def describe(self) -> str:
        lines = [f"Loaded {self.name} in {self.load_s:.1f} s.",
                 f"File: {self.path} ({_human_bytes(self.size_bytes)})",
                 f"Architecture: {self.architecture or 'unknown'}, "
                 f"{_human_count(self.n_params)} parameters"
                 + (f" (labelled {self.size_label})" if self.size_label else ""),
                 f"Trained context: {self.n_ctx_train:,} tokens; context used here: {self.n_ctx:,} tokens.",
                 "Chat template: " + ("yes (prompts use the model's own template)" if self.has_chat_template
                                      else "none (plain-text prompts ending in 'Label:')")]
        if self.n_ctx_train and self.n_ctx > self.n_ctx_train:
            lines.append(f"Warning: the context size {self.n_ctx:,} exceeds what the model was trained on "
                         f"({self.n_ctx_train:,}); answers beyond that length are unreliable.")
        return "\n".join(lines)


def check_student(model_path: str | None, n_ctx: int, n_threads: int | None) -> StudentCheck:
    """Load a student GGUF (None: the bundled Gemma 3 270M) with these settings and read what it is."""
    # Imported here: llama.cpp is heavy and only needed when the user asks for a check.
    import llama_cpp.llama_cpp as llama_capi

    from ..backends.bundled import bundled_student_path
    from ..backends.llama_runtime import LlamaOwner, check_gguf_file, read_gguf_metadata

    path = check_gguf_file(model_path) if model_path else bundled_student_path()
    header = read_gguf_metadata(path, {"general.name", "general.architecture", "general.size_label"})
    started = time.perf_counter()
    owner = LlamaOwner(path, n_ctx=n_ctx, n_threads=n_threads, name="student-check", flash_attn=True)
    try:
        def inspect(llama: Any) -> dict[str, Any]:
            meta = dict(llama.metadata or {})
            return {"n_params": int(llama_capi.llama_model_n_params(llama.model)),
                    "n_ctx_train": int(llama_capi.llama_model_n_ctx_train(llama.model)),
                    "n_ctx": int(llama.n_ctx()),
                    "chat": bool(meta.get("tokenizer.chat_template")),
                    "name": meta.get("general.name"), "arch": meta.get("general.architecture")}
        info = owner.call(inspect)
    finally:
        owner.close()
    return StudentCheck(
        path=str(Path(path).resolve()), name=str(info["name"] or header.get("general.name") or Path(path).name),
        size_bytes=Path(path).stat().st_size, architecture=str(info["arch"] or header.get("general.architecture", "")),
        size_label=str(header.get("general.size_label", "")), n_params=info["n_params"],
        n_ctx_train=info["n_ctx_train"], n_ctx=info["n_ctx"], has_chat_template=info["chat"],
        load_s=time.perf_counter() - started)


def probe_teacher(settings: RunSettings, api_key: str | None) -> str:
    """One tiny real call to the configured teacher; a sentence on success, an exception otherwise.
    `api_key` (a key typed but not saved yet) overrides the stored one for this call only."""
    if settings.teacher == "gemini":
        from ..backends.gemini_teacher import GeminiTeacher

        # One attempt, no backoff: the user is waiting and wants the first answer, good or bad.
        with GeminiTeacher(settings.teacher_model, api_key=api_key or None, base_url=settings.teacher_base_url,
                           max_concurrency=1, retry_attempts=1, timeout_s=30) as teacher:
            return teacher.test_connection()
    from pydantic import BaseModel

    from ..backends.local_teacher import LocalTeacher
    from ..core.backends import TeacherRequest

    class Ping(BaseModel):
        answer: str

    started = time.perf_counter()
    with LocalTeacher(settings.teacher_gguf, n_ctx=512, max_tokens=24) as teacher:
        reply = teacher.generate(TeacherRequest("Reply in JSON.", 'Reply with {"answer": "OK"}.', Ping, "probe"))
        name = teacher.model_path.name
    elapsed = time.perf_counter() - started
    try:
        Ping.model_validate_json(reply.text)
    except ValueError:
        return (f"The local teacher {name} loaded and answered in {elapsed:.1f} s, but its reply was not the "
                f"requested JSON: {reply.text[:120]!r}. Runs validate and retry every reply.")
    return f"The local teacher {name} loaded and answered in {elapsed:.1f} s ({reply.usage.total_tokens} tokens)."


def keychain_available() -> bool:
    """Whether keyring found a usable OS keychain (its `fail` backend means none)."""
    try:
        import keyring
        from keyring.backends import fail
        return not isinstance(keyring.get_keyring(), fail.Keyring)
    except Exception:  # noqa: BLE001 - a broken keyring install is "no keychain" for the user
        return False


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.0f} M"
    return f"{n:,}"


# ---------------------------------------------------------------------------
# Background runner
# ---------------------------------------------------------------------------
class _CheckThread(QThread):
    """Runs one check function; `done(ok, result_or_message)` arrives queued on the dialog's thread.
    Error texts are redacted of `secrets` (a typed API key) before they leave the thread."""

    done = Signal(bool, object)

    def __init__(self, kind: str, fn: Callable[[], Any], hide: tuple[str, ...] = ()) -> None:
        super().__init__()  # no parent: it may outlive the dialog (see _LIVE_CHECKS)
        self.kind = kind
        self.fn = fn
        self.hide = hide
        self.abandoned = False

    def run(self) -> None:  # on the worker thread
        try:
            result = self.fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the user in words
            message = str(exc).strip() or type(exc).__name__
            self.done.emit(False, secrets.redact(message, self.hide))
            return
        self.done.emit(True, result)


# ---------------------------------------------------------------------------
# The dialog
# ---------------------------------------------------------------------------
class ModelsDialog(QDialog):
    """Edits the model part of a project's RunSettings. The API key never enters the settings: it goes to the
    OS keychain (backends/secrets.py) or stays in the environment."""

    def __init__(self, settings: RunSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self._original = dataclasses.replace(settings)
        self._task: _CheckThread | None = None
        self.last_student_check: StudentCheck | None = None
        self._build()
        self._load(settings)
        self._refresh_key_status()
        self._update_teacher_mode()

    # -- construction -------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_teacher(), "Teacher")
        self.tabs.addTab(self._build_student(), "Student")
        self.tabs.addTab(self._build_embedder(), "Embedder")
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
        self.resize(720, 600)

    def _build_teacher(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        mode = QHBoxLayout()
        self.local_radio = QRadioButton("Local GGUF model (offline, free)")
        self.gemini_radio = QRadioButton("Gemini API (needs an API key, paid per token)")
        self._mode_group = QButtonGroup(self)
        for b in (self.local_radio, self.gemini_radio):
            self._mode_group.addButton(b)
            mode.addWidget(b)
            b.toggled.connect(self._update_teacher_mode)
        mode.addStretch(1)
        layout.addLayout(mode)

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
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, 64)
        self.concurrency.setMaximumWidth(120)
        self.concurrency.setToolTip("Requests in flight at once; lower it if you hit the per-minute quota")
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
        key_row = QHBoxLayout()
        self.api_key = QLineEdit()
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setPlaceholderText("paste a key to save it in the OS keychain")
        self.save_key_btn = QPushButton("Save to keychain")
        self.save_key_btn.clicked.connect(self.save_key)
        self.forget_key_btn = QPushButton("Remove")
        self.forget_key_btn.setToolTip("Delete the key stored in the OS keychain")
        self.forget_key_btn.clicked.connect(self.forget_key)
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(self.save_key_btn)
        key_row.addWidget(self.forget_key_btn)
        form.addRow("API key:", key_row)
        self.key_status = QLabel()
        self.key_status.setWordWrap(True)
        form.addRow("", self.key_status)
        self.base_url = QLineEdit()
        self.base_url.setPlaceholderText("default: Google's endpoint (set only for a proxy or a test server)")
        form.addRow("Base URL:", self.base_url)
        layout.addWidget(self.gemini_box)

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
        box = QGroupBox("Student (the small model that follows the rules)")
        form = QFormLayout(box)
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
        layout.addWidget(box)
        row = QHBoxLayout()
        self.check_btn = QPushButton("Load and check")
        self.check_btn.setToolTip("Load the model with these settings and show what it is")
        self.check_btn.clicked.connect(self.check_student)
        row.addWidget(self.check_btn)
        row.addStretch(1)
        layout.addLayout(row)
        self.student_result = self._result_label()
        layout.addWidget(self.student_result)
        layout.addStretch(1)
        return page

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
        (self.gemini_radio if s.teacher == "gemini" else self.local_radio).setChecked(True)
        self.teacher_gguf.setText(s.teacher_gguf or "")
        self.gemini_model.setCurrentText(s.teacher_model)
        self.concurrency.setValue(max(1, s.teacher_concurrency))
        self.price_in.setValue(s.price_in_per_million)
        self.price_out.setValue(s.price_out_per_million)
        self.base_url.setText(s.teacher_base_url or "")
        self.student_gguf.setText(s.student_gguf or "")
        self.threads.setValue(s.student_threads or 0)
        self.n_ctx.setValue(s.student_n_ctx)
        self.embedder_path.setText(s.embedder or "")

    def settings(self) -> RunSettings:
        """The settings as edited (every field the dialog does not show is kept as it came in)."""
        return dataclasses.replace(
            self._original,
            teacher="gemini" if self.gemini_radio.isChecked() else "local",
            teacher_model=self.gemini_model.currentText().strip() or self._original.teacher_model,
            teacher_gguf=self.teacher_gguf.text().strip() or None,
            teacher_base_url=self.base_url.text().strip() or None,
            teacher_concurrency=self.concurrency.value(),
            price_in_per_million=self.price_in.value(),
            price_out_per_million=self.price_out.value(),
            student_gguf=self.student_gguf.text().strip() or None,
            student_n_ctx=self.n_ctx.value(),
            student_threads=self.threads.value() or None,
            embedder=self.embedder_path.text().strip() or None,
        )

    def validation_errors(self) -> list[str]:
        """Problems that would make a run fail at once; cheap checks only (no model is loaded)."""
        errors: list[str] = []
        gemini = self.gemini_radio.isChecked()
        model = self.gemini_model.currentText().strip()
        if gemini and (not model or any(c.isspace() for c in model)):
            errors.append("Teacher: enter a Gemini model name without spaces, e.g. gemini-2.5-flash.")
        url = self.base_url.text().strip()
        if url and not url.startswith(("http://", "https://")):
            errors.append(f"Teacher: the base URL must start with http:// or https:// (got {url!r}).")
        if not gemini and self.teacher_gguf.text().strip():
            errors += self._gguf_error("Teacher", self.teacher_gguf.text().strip())
        if self.student_gguf.text().strip():
            errors += self._gguf_error("Student", self.student_gguf.text().strip())
        folder = self.embedder_path.text().strip()
        if folder:
            path = Path(folder).expanduser()
            if not path.is_dir():
                errors.append(f"Embedder: the folder {path} does not exist.")
            elif not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
                errors.append(f"Embedder: {path} is not a sentence-transformers model folder "
                              "(no modules.json or config.json).")
        return errors

    @staticmethod
    def _gguf_error(role: str, path: str) -> list[str]:
        from ..backends.llama_runtime import check_gguf_file
        try:
            check_gguf_file(path)
        except ModelFileError as exc:
            return [f"{role}: {exc}"]
        return []

    def accept(self) -> None:
        errors = self.validation_errors()
        # A typed key is the user's work: store it rather than drop it, or say why it cannot be stored.
        if self.api_key.text().strip():
            try:
                secrets.set_api_key(self.api_key.text())
                self.api_key.clear()
                self._refresh_key_status()
            except (secrets.SecretStoreError, ValueError) as exc:
                errors.append(f"API key: {secrets.redact(str(exc), [self.api_key.text()])} "
                              "(or clear the key field to close without saving it).")
        if errors:
            self.error_label.setText("\n".join(errors))
            self.error_label.show()
            return
        self._abandon_task()
        super().accept()

    def reject(self) -> None:
        self._abandon_task()
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self._abandon_task()
        super().closeEvent(event)

    # -- API key --------------------------------------------------------------------------------------------
    def key_status_text(self) -> str:
        source = secrets.api_key_source("gemini")
        have_keychain = keychain_available()
        if source is not None and source.startswith("environment"):
            text = f"Key in use: from the {source}."
            if have_keychain:
                text += " A key saved here is stored but the environment variable takes precedence."
        elif source is not None:
            text = "Key in use: from the OS keychain (service 'pld-desktop')."
        else:
            text = "No key is set."
        if not have_keychain:
            text += (" No OS keychain is available on this system, so a key cannot be saved here: set the "
                     "GEMINI_API_KEY environment variable before starting PLD Desktop.")
        return text

    def _refresh_key_status(self) -> None:
        self.key_status.setText(self.key_status_text())
        have_keychain = keychain_available()
        self.save_key_btn.setEnabled(have_keychain)
        self.forget_key_btn.setEnabled(have_keychain and secrets.api_key_source("gemini") == "OS keychain")
        if not have_keychain:
            self.save_key_btn.setToolTip("No OS keychain is available; set GEMINI_API_KEY instead")

    def save_key(self) -> None:
        key = self.api_key.text()
        if not key.strip():
            self.teacher_result.setText("Paste an API key into the field first.")
            return
        try:
            secrets.set_api_key(key)
        except (secrets.SecretStoreError, ValueError) as exc:
            self.teacher_result.setText(f"The key was not saved: {secrets.redact(str(exc), [key])}")
            return
        self.api_key.clear()
        self._refresh_key_status()
        self.teacher_result.setText("The API key is saved in the OS keychain (not in the project).")

    def forget_key(self) -> None:
        try:
            secrets.delete_api_key("gemini")
        except secrets.SecretStoreError as exc:
            self.teacher_result.setText(str(exc))
            return
        self._refresh_key_status()
        self.teacher_result.setText("The API key was removed from the OS keychain.")

    # -- checks in the background ---------------------------------------------------------------------------
    def test_connection(self) -> None:
        settings = self.settings()
        typed = self.api_key.text().strip()
        if settings.teacher == "gemini" and not typed and secrets.api_key_source("gemini") is None:
            self.teacher_result.setText("No Gemini API key: paste one above, or set GEMINI_API_KEY.")
            return
        what = f"Gemini {settings.teacher_model}" if settings.teacher == "gemini" else "the local teacher"
        self._start("teacher", f"Testing {what}…", lambda: probe_teacher(settings, typed or None),
                    hide=(typed,) if typed else ())

    def check_student(self) -> None:
        settings = self.settings()
        self._start("student", "Loading the student model…",
                    lambda: check_student(settings.student_gguf, settings.student_n_ctx, settings.student_threads))

    def busy(self) -> bool:
        return self._task is not None

    def _start(self, kind: str, message: str, fn: Callable[[], Any], hide: tuple[str, ...] = ()) -> None:
        if self._task is not None:
            return
        target = self.teacher_result if kind == "teacher" else self.student_result
        target.setText("")
        task = _CheckThread(kind, fn, hide)
        task.done.connect(self._on_done)
        task.finished.connect(lambda t=task: _LIVE_CHECKS.discard(t))
        _LIVE_CHECKS.add(task)
        self._task = task
        self.busy_label.setText(message)
        self._show_busy(True)
        task.start()

    @Slot(bool, object)
    def _on_done(self, ok: bool, result: object) -> None:
        task = self.sender()
        if not isinstance(task, _CheckThread) or task.abandoned or task is not self._task:
            return
        self._task = None
        self._show_busy(False)
        if task.kind == "teacher":
            self.teacher_result.setText(("✔ " if ok else "✘ Failed: ") + str(result))
        else:
            self.last_student_check = result if ok else None
            self.student_result.setText(result.describe() if ok else f"✘ Could not load the student: {result}")

    def cancel_check(self) -> None:
        kind = self._task.kind if self._task is not None else None
        self._abandon_task()
        if kind is not None:
            target = self.teacher_result if kind == "teacher" else self.student_result
            target.setText("Cancelled. (A model load or a request in flight cannot be interrupted; it finishes "
                           "in the background and its result is ignored.)")

    def _abandon_task(self) -> None:
        if self._task is not None:
            self._task.abandoned = True
            self._task = None
        self._show_busy(False)

    def _show_busy(self, on: bool) -> None:
        for w in (self.busy_label, self.busy_bar, self.cancel_btn):
            w.setVisible(on)
        for b in (getattr(self, "test_btn", None), getattr(self, "check_btn", None)):
            if b is not None:
                b.setEnabled(not on)

    def _update_teacher_mode(self) -> None:
        gemini = self.gemini_radio.isChecked()
        self.gemini_box.setEnabled(gemini)
        self.local_box.setEnabled(not gemini)

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
