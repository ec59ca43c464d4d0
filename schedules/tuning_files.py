"""A tuning database folder's file names and MetaSchedule's time for a failed candidate: one
definition for ``compile --db`` (``schedules.tuning``) and the tuner (``bnn_tvm.measure``).
Free of TVM, so the CLI's database checks start fast."""

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
UNTUNED_FILE = "untuned.json"  # the untuned schedules' times ``tune`` measured (``compile --db`` reads them)
FAILED_RUN_SECS = 1e9  # MetaSchedule records 1e10 s for a candidate that did not build or run
