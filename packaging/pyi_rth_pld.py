"""PyInstaller runtime hook: let the bundled executables run `<exe> -c CODE ARGS...` like `python -c`.

pld_desktop.backends.cpu_probe probes llama.cpp's AMX kernels once with
`subprocess.run([sys.executable, "-c", PROBE, model])`; in a bundle sys.executable is `pld` or `pld-desktop`,
which would otherwise treat `-c` as a bad argument and wrongly record "AMX crashes here" (slower model loading).
"""

import sys

if getattr(sys, "frozen", False) and len(sys.argv) >= 3 and sys.argv[1] == "-c":
    _code = sys.argv[2]
    sys.argv = ["-c"] + sys.argv[3:]
    _globals = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(_code, "<string>", "exec"), _globals)
    except SystemExit as _exit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)
