"""Wake phrase spotting with pocketsphinx's keyphrase search (no LM: cheap enough to run always).

With pocketsphinx as the recogniser the spotter adds its search to the recogniser's decoder
(one acoustic model in memory, and the live CMN is already adapted to the room when the
question starts); with vosk it has a small decoder of its own.
"""
from __future__ import annotations

import numpy as np

from appliance.config import SpeechConfig
from appliance.errors import ConfigError
from appliance.speech.adapt import WORD, read_dictionary
from appliance.speech.asr import DecoderSession, PocketsphinxRecognizer, pocketsphinx_model_dir
from appliance.speech.audio import to_int16_bytes

SEARCH = "wake"


class WakePhraseSpotter:
    def __init__(self, phrase: str, threshold: float = SpeechConfig.wake_threshold,
                 recognizer: PocketsphinxRecognizer | None = None):
        from pocketsphinx import Decoder

        model = pocketsphinx_model_dir()
        words = WORD.findall(phrase.lower())
        stock = read_dictionary(model / "cmudict-en-us.dict")
        unknown = [w for w in words if w not in stock]
        if not words or unknown:
            raise ConfigError(f"wake phrase {phrase!r}: words not in the pronunciation dictionary: {unknown}")
        self.phrase = " ".join(words)
        if recognizer is not None:
            self.session = recognizer.session
            for word in words:  # the KB dictionary may lack them
                if self.session.decoder.lookup_word(word) is None:
                    self.session.decoder.add_word(word, stock[word], False)
        else:
            self.session = DecoderSession(Decoder(hmm=str(model / "en-us"), dict=str(model / "cmudict-en-us.dict"),
                                                  lm=None, kws_threshold=threshold, loglevel="FATAL"), None)
        self.session.decoder.add_keyphrase(SEARCH, self.phrase)

    def detect(self, frame: np.ndarray) -> bool:
        """True once the phrase has been heard; the search then restarts on the next frame."""
        if self.session.active != SEARCH:
            self.session.begin(SEARCH)
        self.session.decoder.process_raw(to_int16_bytes(frame), False, False)
        if self.session.decoder.hyp() is None:
            return False
        self.session.end()
        return True

    def pause(self) -> None:
        """Stop spotting (a question is being heard); ``detect`` resumes it."""
        if self.session.active == SEARCH:
            self.session.end()
