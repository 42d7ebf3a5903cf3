"""The build hook pyproject.toml cannot express: the checkout's config.toml (the reference
of every option) goes into the package as broker/config/default.toml, so an installed
broker prints it (``broker config --print-default``), and CHANGELOG.md goes beside the
packages as broker/CHANGELOG.md. One file each, no copy to keep in step."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithDefaultConfig(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "broker" / "config" / "default.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(ROOT / "config.toml"), str(target))
        self.copy_file(str(ROOT / "CHANGELOG.md"), str(Path(self.build_lib) / "broker" / "CHANGELOG.md"))


setup(cmdclass={"build_py": BuildWithDefaultConfig})
