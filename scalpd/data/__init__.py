"""Market data: bar series, their validation and gaps, Parquet files, the synthetic market."""
