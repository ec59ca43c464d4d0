"""Autotuning with MetaSchedule: binary kernels in their binary-aware space, float kernels in
MetaSchedule's default one, an XGBoost cost model, and a JSON database that survives being killed.

Tasks: every distinct PrimFunc of the model as it will be compiled (``schedules.tuning.
prepare_module``): the binary kernels (``bnn.op``) and the float operators ``LegalizeOps``
makes. Identical kernels (same structure) are one task weighted by how often the model calls it.

Search: ``schedules.tuning.space_generator`` per task, MetaSchedule's evolutionary search with a
small population (2 cores), the gradient task scheduler (weights = call counts), the XGBoost
cost model, a builder timeout raised above MetaSchedule's 30 s (bitserial builds take longer on
a loaded machine). Builds for another machine are cross-compiled (the target's cross compiler)
and measured over TVM RPC (``--tracker``/``--key`` or ``--rpc``).

Database and resume: ``DIR/database_workload.json`` + ``DIR/database_tuning_record.json``
(MetaSchedule's ``JSONDatabase``, one line appended per measured candidate). ``--trials N`` is the
number of records the database should hold for this model and target: a run interrupted after
``k`` records does the remaining ``N - k`` when started again (and, with the same ``N`` after
it finished, nothing). The evolutionary search starts from the best stored records, and the
cost model is trained on the stored ones before the first new batch. A truncated last line of
a killed run is dropped with a warning.

Report: ``DIR/untuned.json`` holds each task's untuned time (hand-written schedule for binary
kernels, TVM's default lowering for float ones), measured once with the same builder and runner;
``DIR/report.json`` per task: untuned time, best tuned time, trials; ``--plot`` draws it.
"""
