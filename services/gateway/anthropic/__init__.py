"""The Anthropic Messages API on top of the inference path: wire types (models.py), request
translation to llama-server's OpenAI chat API (translate.py), answers and streams back in
Anthropic's shape (answers.py, stream.py), errors (errors.py), and the routes (routes.py)."""
