"""The one exception type users see: a one-line, actionable message."""


class ImgclsError(Exception):
    """Bad input or configuration. The CLI prints the message alone, without a traceback."""


class ImgclsValueError(ImgclsError, ValueError):
    """A bad value (input data, labels, a hyperparameter): also a ValueError, because that is what
    scikit-learn's tools (GridSearchCV's error_score, check_estimator) expect an estimator to raise."""
