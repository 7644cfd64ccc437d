"""Equal-budget studies: does MossNet beat its peers? (``mossnet compare``, docs/STUDIES.md)

module             what it holds
=================  ===========================================================================
``arch_configs``   the compared architectures, built at matched *active* parameters
``mqar_data``      the seeded multi-query associative recall (MQAR) generator
``mqar``           the MQAR study: widths x numbers of pairs x learning rates, recall accuracy
``lm_study``       the language-model study (and the ablations) on a prepared corpus
``runner``         one run = one result JSON; skip finished runs; run several in parallel
``report``         tables (Markdown) and plots (PNG)
``study``          one ``mossnet compare`` invocation: specs -> runs -> report
``common``         thread and job counts (device and autocast: ``mossnet.runtime``)
=================  ===========================================================================
=======
===================  =========================================================================
module               what it holds
===================  =========================================================================
``specs``            run specs: ``LMRunSpec`` and ``MQARRunSpec``, frozen, JSON round trip
``arch_configs``     the compared architectures, built at matched *active* parameters
``lm_study``         the language-model study (and the ablations) on a prepared corpus
``decomposition``    the decomposition study: variants A-H, the lr inheritance, the config table
``lm_probes``        its metrics: recall-token and repeated-passage losses, router statistics
``mqar_data``        the seeded MQAR generator (Zoology's sampling by default) and its mixture
``mqar``             one MQAR run, and the first grid (widths x pairs x learning rates)
``attention_lm``     the MQAR gate's attention model, every factor a switch
``mqar_calibration`` the MQAR gate (Zoology's attention, the ladder) and the ranking
``runner``           one run = one result JSON; skip recorded runs; run several in parallel
``report``           tables (Markdown) and plots (PNG); ``report_paired``: the three-seed ones
``study``            one ``mossnet compare`` invocation: stages of specs -> runs -> report
``common``           thread and job counts (device and autocast: ``mossnet.runtime``)
===================  =========================================================================

Heavy imports (torch, transformers) happen inside functions, so importing the package is cheap.
"""
