"""The taskloc CLI run in-process for tests (a module, not conftest: several conftest.py files exist)."""
def cli(args, capsys) -> tuple[int, str, str]:
    """Run the taskloc CLI in-process: (exit code, stdout, stderr)."""
    from taskloc.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
