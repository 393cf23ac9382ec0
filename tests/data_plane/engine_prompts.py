"""Prompts the engine tests share (the scheduler's own and those over HTTP)."""

# Eight different chats: the determinism tests run them alone and all at once.
PROMPTS = [
    "What is the capital city of France? Answer in one sentence.",
    "Write a short poem about the moon.",
    "Explain photosynthesis to a child.",
    "List three fruits that are red.",
    "Describe the ocean in two sentences.",
    "How do airplanes fly?",
    "Tell me a fun fact about cats.",
    "Why is the sky blue?",
]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the model goes on counting: a long stream
