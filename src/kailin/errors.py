"""Exceptions with messages meant for users: each names the file or record and what to do."""


class KailinError(Exception):
    """Base class; the command line prints these without a traceback and exits with code 2."""


class InputError(KailinError):
    """Bad input data: the message names the file/record/position and the remedy."""


class MissingDependencyError(KailinError):
    """An optional dependency is absent; the message gives the pip command that installs it."""


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependencyError` if ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"this feature needs the Python package '{module}': pip install 'kailin[{extra}]'"
        )
