"""Wake phrase spotting with pocketsphinx's keyphrase search (no LM: cheap enough to run always)."""
from __future__ import annotations

import numpy as np

from appliance.errors import ConfigError
from appliance.speech.adapt import WORD, read_dictionary
from appliance.speech.asr import pocketsphinx_model_dir
from appliance.speech.audio import to_int16_bytes


class WakePhraseSpotter:
    def __init__(self, phrase: str, threshold: float = 1e-20):
        from pocketsphinx import Decoder

        model = pocketsphinx_model_dir()
        words = WORD.findall(phrase.lower())
        known = read_dictionary(model / "cmudict-en-us.dict")
        unknown = [w for w in words if w not in known]
        if not words or unknown:
            raise ConfigError(f"wake phrase {phrase!r}: words not in the pronunciation dictionary: {unknown}")
        self.phrase = " ".join(words)
        self._decoder = Decoder(hmm=str(model / "en-us"), dict=str(model / "cmudict-en-us.dict"),
                                keyphrase=self.phrase, kws_threshold=threshold, lm=None, loglevel="FATAL")
        self._decoder.start_utt()

    def detect(self, frame: np.ndarray) -> bool:
        """True once the phrase has been heard; the search restarts for the next one."""
        self._decoder.process_raw(to_int16_bytes(frame), False, False)
        if self._decoder.hyp() is None:
            return False
        self.reset()
        return True

    def reset(self) -> None:
        self._decoder.end_utt()
        self._decoder.start_utt()
