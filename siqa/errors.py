"""User-facing errors: one line on stderr, exit code 2, no traceback (unless --debug)."""
import sys
import traceback


class UserError(Exception):
    """A problem with the user's input (file, key, value), reported as one line.

    The message says what is wrong, which file or key, and what to do.
    """


def run_cli(main, argv=None):
    """Run `main(argv)`; turn a UserError into one stderr line and exit code 2.

    `--debug` anywhere in argv is removed and makes errors show their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except UserError as err:
        if debug:
            traceback.print_exc()
        message = " ".join(str(err).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


SHOW = 3  # how many examples a message lists


def examples(items):
    items = list(items)
    shown = ", ".join(str(x) for x in items[:SHOW])
    return shown + (", ..." if len(items) > SHOW else "")


def counted(n, noun, plural=None) -> str:
    """'1 scene', '2 scenes', '0 scenes': a count with its noun in agreement (`plural` where
    adding an s is wrong: counted(n, 'entry', 'entries'))."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
