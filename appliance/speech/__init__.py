"""Speech front end: audio in and out, voice activity, wake phrase, recognition, synthesis.

Data flows one way: audio chunks → VAD/end-pointing → wake phrase → ASR transcript →
(the QA pipeline) → TTS audio chunks → speaker. Each stage is one module here.
"""
