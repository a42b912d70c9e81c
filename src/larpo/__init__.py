"""larpo: LLM alignment as retriever optimization.

The policy is a retriever, the reward model its reranker, and alignment is listwise preference
optimization on the policy's own ranked candidates (Jin et al., ICML 2025).
"""

__version__ = "0.1.0"
