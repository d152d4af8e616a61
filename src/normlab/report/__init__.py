"""Results flowing back up: statistics, findings, the report, graphs, grids, worked examples, summaries."""
