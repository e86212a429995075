"""The `bwarea` command line: `cli.main` dispatches to one thin module per command, each parsing its options
(declared once, in the dataclass or signature that uses them; cli/options.py) and calling library functions."""
