"""``python -m rsseg``: the same as the ``rsseg`` command."""

from rsseg.cli import main

if __name__ == "__main__":
    main()
