"""`python -m fastopt bench ...` (also the `fastopt` console script)."""
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"bench": "check and time the kernels (python -m fastopt bench --help)"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        usage = "usage: fastopt COMMAND [options]\n\ncommands:\n" + "".join(
            f"  {name:<8}{what}\n" for name, what in commands.items())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"fastopt: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            return 2
        print(usage, end="", file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    from .bench import main as bench_main

    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
