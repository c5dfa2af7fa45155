"""Installs `ce_bench_lm_eval.pth` beside the package (setup.cfg holds everything else).

The .pth line runs at interpreter start-up; `ce_bench._autoregister` returns at once unless the
process is `lm_eval` / `python -m lm_eval`, so other Python processes pay nothing. A wheel gets the
file through `build_py`; an editable install (`pip install -e`) through `editable_wheel`.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "ce_bench_lm_eval.pth"
PTH_SOURCE = Path(__file__).parent / PTH


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _AlsoWritePth(super()._select_strategy(*args, **kwargs))


class _AlsoWritePth:
    """Wraps setuptools' editable strategy and adds our .pth to the editable wheel's root."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.inner.__exit__(*exc)

    def __call__(self, wheel, files, mapping) -> None:
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH, PTH_SOURCE.read_text())


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
