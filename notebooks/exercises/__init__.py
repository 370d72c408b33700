"""Checks a student runs on their own answer: each says right or not yet, never the answer."""

NO_ANSWER = "no answer yet: replace the None above with yours, then run this cell again"


def verdict(is_right, hint=""):
    """Print one line, ✓ or ✗, and return whether the answer is right.

    The check computes what it compares against from the library itself, so a student who wants
    the answer can read the check's code; what it prints never contains the answer. A hint may
    give a direction ("too few bits"): it helps a student who reasoned, and it also lets one who
    did not search for the answer by trying, which a check cannot prevent and a teacher should
    know (a review found a number by 12 tries).
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
