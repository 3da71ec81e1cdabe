"""The train stage: pre-training on rendered shards, dataset mixes, transfer, hyper-parameter search.

Entry points: :func:`services.train.loop.pretrain`, :func:`services.train.transfer.run_transfer`,
:func:`services.train.job.run_job`, :func:`services.train.servicer.register`.
See docs/train-stage.md.
"""
