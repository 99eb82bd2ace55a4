"""The paper's evaluation protocol: data sets, periods, replay, tables and reports."""
