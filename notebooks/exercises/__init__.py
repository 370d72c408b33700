"""Checks a student runs on their own answer: each says right or not yet, never the answer."""

NO_ANSWER = "no answer yet: replace the None above with yours, then run this cell again"


def verdict(is_right, hint=""):
    """Print one line, ✓ or ✗, and return whether the answer is right.

    The check computes what it compares against from the library itself, so a student who wants
    the answer can read the check's code; what it prints never contains the answer.
    """
    if is_right:
        print("✓ right")
    else:
        print("✗ not yet" + (f": {hint}" if hint else ""))
    return bool(is_right)


def answered(answer):
    """False (and says so) while the answer cell still holds its placeholder None."""
    if answer is None:
        print("… " + NO_ANSWER)
        return False
    return True
