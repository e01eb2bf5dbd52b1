"""LLMdoctor (arXiv 2601.10416): a frozen patient steered token by token by small doctors.

  data        preference pairs (JSONL, TRL's prompt/chosen/rejected) and the bundled positivity set
  rewards     stage 1: token-level rewards from the patient's positive and negative faces
  doctor      the doctor: a causal LM plus a value head; its saved folder
  tfpo        stage 2: the TFPO losses (SubTB flow + value margin) and the position-ramp fit
  distill     a small doctor distilled from the patient before TFPO
  recipes     the stages wired together (build, distil, train TFPO or the GenARM baseline)
  quickstart  everything above end to end on the default patient (judged by fastdoctor.quality)

Decoding needs none of this: a saved doctor is an ordinary HF folder for fastdoctor.generate.
"""
