"""Execution: model building, prompt assembly, the decoding loop, the flow
interpreter and the trace. Imports torch; the front-end never imports this."""
