"""Analyses the binarization passes share; they read the IR and change nothing (a few recognisers
in ``patterns`` and ``binarizers`` emit the view they return through the rule's context).

* ``chain``: the per-channel float ops after a binary kernel as ``Step``s (``trace_chain``,
  ``analyse_chain``, ``Chain``);
* ``rounding``: the integers a kernel returns, how far the float graph can be from its value, the
  chain at every integer and its decision interval;
* ``pools``: decisions through a max pool (2-D, or over the points of a dense's rows);
* ``weights``: constant weights as signs times a per-channel scale (``split_scale``);
* ``patterns``: views and inputs the fusions recognise; ``binarizers``: the binarizer forms;
* ``attention``: Bi-Attention's operands and its score intervals;
* ``elementwise``: float32 functions of one tensor bounded over every input;
  ``elementwise_graph``: such a function read from the Relax graph (an estimator's ``p``).

They import ``relay_passes.common`` and one another, never a pass.
"""
