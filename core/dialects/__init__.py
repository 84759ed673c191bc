"""The APIs apps speak, each read into one canonical view: Chat Completions.

A request that comes on the Responses API (:mod:`core.dialects.responses`) or on
Anthropic's Messages (:mod:`core.dialects.messages`) is kept as the client sent it
(``exchanges.client_request``) and also read into the Chat Completions request it amounts
to; its answer likewise into a ``chat.completion``. Curation, training, evaluation, task
identification, export and routing read only that view, so every dialect gets the same
tasks, students and gates. A student's answer, a ``chat.completion``, is written back out
in the dialect the client spoke.
"""
