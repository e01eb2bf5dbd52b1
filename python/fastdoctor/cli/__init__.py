"""The `fastdoctor` command line: main.py (env, generate, and the parser), llmdoctor.py and taro.py (each
method's commands). The console entry point is fastdoctor.cli:main."""
from .main import main

__all__ = ["main"]
