"""Reports: the paper's numbers (`paper`), the result tables they are read from (`tables`), the
claims of paper_checks.md (`claims`) and the figures (`plots`). Claims and plots read tables
through `tables` and never import each other."""
