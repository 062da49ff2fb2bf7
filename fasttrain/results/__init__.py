"""The results record: measured accuracy of finished runs, kept in the repository.

- `record.py`: a finished run directory -> a record folder (small text files + record.json), never a checkpoint;
- `collect.py`: reading records and `table.yaml` (rows, columns, published numbers with sources);
- `tables.py`: the tables (markdown) of the README and of the site's results page, built from them;
- `figure.py`: the per-dataset figure (top-1 per epoch, many / medium / few bars);
- `cli.py`: `fasttrain results [DIR] [--readme README.md] [--docs PAGE] --write|--check` and
  `fasttrain results record RUN_DIR [--into DIR]`.
"""
