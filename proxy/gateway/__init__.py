"""The gateway: the API edges (chat completions, pass-through, operations), the teacher
client, capture and recording. It imports none of proxy's other subpackages."""
