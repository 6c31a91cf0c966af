"""`python -m scrapvision` runs the same CLI as the `scrapvision` command."""

from scrapvision.cli import app

if __name__ == "__main__":
    app(prog_name="scrapvision")
