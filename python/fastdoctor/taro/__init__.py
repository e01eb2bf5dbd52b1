"""TARo (arXiv 2603.18411, METHODS.md §3): a step-wise reward model and a token-level router that decides,
per token, how strongly it steers the frozen base.

  reasoning        the bundled arithmetic problems and step pairs, the answer extractor and step verifier
  reward_model     stage 1: the step-wise autoregressive reward model (GenARM's loss on step pairs)
  router           stage 2: the Router, its files, RoutedSteering for generate, the GenARM equivalence
  router_cache     the frozen models' outputs on gold solutions, computed once
  router_training  the router's loss, training and teacher-forced evaluation
  evaluate         greedy accuracy of base, GenARM, router and RM on held-out problems

The main names are re-exported here (fastdoctor.taro.Router, ...).
"""
from .reasoning import Problem, StepPair, chat_prompt
from .reward_model import (RM_FORMAT, PairTokens, load_reward_model, pair_accuracy, save_reward_model, step_context,
                           step_pair_tokens, train_reward_model)
from .router import (ROUTER_FORMAT, RoutedSteering, Router, convex_equivalent, convex_mix, genarm_equivalent,
                     load_router, read_router_meta, save_router)
from .router_cache import CACHE_FORMAT, CacheItem, RouterCache, build_router_cache, model_signature, solution_tokens
from .router_training import (bernoulli_entropy, digit_token_ids, evaluate_routing_nll, routed_nll, router_batch_loss,
                              train_router)

__all__ = ["CACHE_FORMAT", "RM_FORMAT", "ROUTER_FORMAT", "CacheItem", "PairTokens", "Problem", "RoutedSteering",
           "Router", "RouterCache", "StepPair", "bernoulli_entropy", "build_router_cache", "chat_prompt",
           "convex_equivalent", "convex_mix", "digit_token_ids", "evaluate_routing_nll", "genarm_equivalent",
           "load_reward_model", "load_router", "model_signature", "pair_accuracy", "read_router_meta", "routed_nll",
           "router_batch_loss", "save_reward_model", "save_router", "solution_tokens", "step_context",
           "step_pair_tokens", "train_reward_model", "train_router"]
