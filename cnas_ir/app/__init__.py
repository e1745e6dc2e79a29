"""The application layer (ARCHITECTURE.md): the ``cnas-ir`` click commands, the HTML report, the
drawings and the experiment runner. It imports the core and the passes at module level and the
backends only inside the commands that run them, so ``cnas-ir --help`` starts without torch.
"""
