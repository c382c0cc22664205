from edgepose.cli import main

# Guarded: the EdgeTPU worker is a spawned child process, which re-imports the parent's __main__.
if __name__ == "__main__":
    raise SystemExit(main())
