"""The voice inventory: every usable voice of flite, festival and espeak-ng, with stable ids.

* flite: kal (8 kHz diphone), kal16 (diphone), awb, rms, slt (clustergen). ``awb_time``
  is left out: it is a limited-domain voice that can only say the time.
* festival: kal and ked (diphone), slt (HTS).
* espeak-ng: 8 English accents x 6 voice variants each (every variant in two accents),
  each with its own pitch and speaking rate: 48 voices such as
  ``espeak-en-gb-scotland+m2-p50-s145``.

A fixed ~20% of the voices is held out for ``test_unseen`` and never used in
train/dev/test_seen: one flite and one festival voice, the whole West Midlands accent
and every voice of two espeak variants. Holding out the same voices whatever the seed
keeps ``test_unseen`` comparable between builds.

``DEV_UNSEEN_VOICES`` lie outside the inventory: espeak variants it never uses, and
flite voices at another pitch and speaking rate. ``recipes/synthetic/dev_unseen.py``
has them read ``dev``'s sentences, to choose settings for voices a model never heard
without looking at ``test_unseen``.

``weight`` sets a voice's share of its split's utterances: the more natural voices
(flite clustergen, festival HTS) say more than each of the many formant-synthesis
espeak voices.
"""

from __future__ import annotations

import ctypes.util
import shutil
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("espeak", "flite", "festival")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    engine: str  # "espeak", "flite" or "festival"
    name: str  # "slt", "kal"; espeak: "<accent>+<variant>", see espeak_name
    pitch: int | None = None  # espeak: 0-100
    rate: int | None = None  # espeak: words per minute
    weight: int = 1
    unseen: bool = False
    f0_shift: float = 1.0  # flite: factor on the pitch
    stretch: float = 1.0  # flite: factor on the durations (> 1 speaks slower)

    def __post_init__(self) -> None:
        if self.engine != "flite" and self.reshaped:
            raise ValueError(f"{self.engine} voice {self.name!r}: only flite voices take "
                             "f0_shift and stretch")

    @property
    def reshaped(self) -> bool:
        """Whether it speaks at another pitch or rate than its synthesiser's own."""
        return (self.f0_shift, self.stretch) != (1.0, 1.0)

    @property
    def id(self) -> str:
        """Stable id: ``flite-slt``, ``festival-kal``, ``espeak-en-gb+m3-p35-s145``,
        ``flite-awb-f1.15-d0.9`` (flite at another pitch and rate)."""
        if self.engine == "espeak":
            return f"espeak-{self.name}-p{self.pitch}-s{self.rate}"
        if self.reshaped:
            return f"{self.engine}-{self.name}-f{self.f0_shift:g}-d{self.stretch:g}"
        return f"{self.engine}-{self.name}"


FLITE_VOICES = {"kal": 1, "kal16": 2, "awb": 5, "rms": 5, "slt": 5}  # name -> weight
FESTIVAL_VOICES = {  # name -> (Scheme command selecting it, weight)
    "kal": ("voice_kal_diphone", 2),
    "ked": ("voice_ked_diphone", 2),
    "slt": ("voice_cmu_us_slt_arctic_hts", 5),
}
ESPEAK_ACCENTS = {  # accent as in voice ids -> espeak-ng voice name
    "en-us": "en-us", "en-gb": "en", "en-gb-scotland": "en-gb-scotland",
    "en-gb-x-rp": "en-gb-x-rp", "en-gb-x-gbclan": "en-gb-x-gbclan",
    "en-gb-x-gbcwmd": "en-gb-x-gbcwmd", "en-029": "en-029", "en-us-nyc": "en-us-nyc"}
ESPEAK_VARIANTS = ("m1", "f1", "m3", "f2", "klatt", "f3", "m2", "f4", "m4", "f5", "m5",
                   "Annie", "m6", "linda", "m7", "steph", "klatt2", "aunty", "david",
                   "Andrea", "paul", "belinda", "rob", "klatt3")
ESPEAK_VARIANTS_PER_ACCENT = 6
ESPEAK_PROSODY = tuple((pitch, rate) for pitch in (35, 50, 65) for rate in (145, 165, 185))
UNSEEN_FLITE = frozenset({"rms"})
UNSEEN_FESTIVAL = frozenset({"ked"})
UNSEEN_ACCENTS = frozenset({"en-gb-x-gbcwmd"})
UNSEEN_VARIANTS = frozenset({"f4", "klatt2"})


def _espeak_voices() -> list[Voice]:
    voices = []
    for a, accent in enumerate(ESPEAK_ACCENTS):
        for k in range(ESPEAK_VARIANTS_PER_ACCENT):
            variant = ESPEAK_VARIANTS[(3 * a + k) % len(ESPEAK_VARIANTS)]
            pitch, rate = ESPEAK_PROSODY[(a * ESPEAK_VARIANTS_PER_ACCENT + 4 * k) %
                                         len(ESPEAK_PROSODY)]
            unseen = accent in UNSEEN_ACCENTS or variant in UNSEEN_VARIANTS
            voices.append(Voice("espeak", f"{accent}+{variant}", pitch, rate, unseen=unseen))
    return voices


# See the module doc. The weights give flite about the share that the held-out flite and
# festival voices have of test_unseen.
DEV_UNSEEN_VOICES = (
    *(Voice("espeak", f"{accent}+{variant}", pitch, rate)
      for accent, variant, pitch, rate in [
          ("en-us", "m8", 50, 165), ("en-us", "Alex", 35, 185), ("en-gb", "klatt4", 65, 145),
          ("en-gb", "Gene", 50, 185), ("en-gb-scotland", "Lee", 35, 165),
          ("en-gb-scotland", "grandma", 65, 165), ("en-gb-x-rp", "Mike", 50, 145),
          ("en-gb-x-rp", "quincy", 65, 185), ("en-gb-x-gbclan", "adam", 35, 145),
          ("en-gb-x-gbclan", "robert", 50, 165), ("en-029", "edward", 65, 165),
          ("en-029", "iven", 35, 145), ("en-us-nyc", "max", 50, 185),
          ("en-us-nyc", "travis", 65, 145)]),
    Voice("flite", "slt", weight=3, f0_shift=0.85, stretch=1.1),
    Voice("flite", "awb", weight=3, f0_shift=1.15, stretch=0.9),
    Voice("flite", "kal16", weight=2, f0_shift=1.25, stretch=1.05),
)


def espeak_name(voice: Voice) -> str:
    """The name espeak-ng knows an espeak voice by: ``en-gb+m3`` -> ``en+m3``."""
    accent, variant = voice.name.split("+")
    return f"{ESPEAK_ACCENTS[accent]}+{variant}"


def all_voices(engines: tuple[str, ...] = ENGINES) -> list[Voice]:
    """The inventory, in a fixed order, restricted to the given engines."""
    voices = [Voice("flite", name, weight=weight, unseen=name in UNSEEN_FLITE)
              for name, weight in FLITE_VOICES.items()]
    voices += [Voice("festival", name, weight=weight, unseen=name in UNSEEN_FESTIVAL)
               for name, (_, weight) in FESTIVAL_VOICES.items()]
    voices += _espeak_voices()
    return [voice for voice in voices if voice.engine in engines]


# --- availability and licences ------------------------------------------------------------

FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")


def missing_engines(engines: tuple[str, ...] = ENGINES) -> dict[str, str]:
    """Engine -> why it cannot run here (the Debian package to install); empty when all can."""
    missing = {}
    if "espeak" in engines and not ctypes.util.find_library("espeak-ng"):
        missing["espeak"] = "libespeak-ng not found (apt-get install espeak-ng)"
    if "flite" in engines:
        libraries = ["flite"] + [f"flite_cmu_us_{name}" for name in FLITE_VOICES]
        absent = [lib for lib in libraries if not ctypes.util.find_library(lib)]
        if absent:
            missing["flite"] = f"lib{', lib'.join(absent)} not found (apt-get install flite)"
    if "festival" in engines:
        voice_dirs = ("english/kal_diphone", "english/ked_diphone", "us/cmu_us_slt_arctic_hts")
        absent = [d for d in voice_dirs if not (FESTIVAL_VOICE_DIR / d).is_dir()]
        if not shutil.which("festival"):
            missing["festival"] = "festival not found (apt-get install festival)"
        elif absent:
            missing["festival"] = (f"festival voices missing: {', '.join(absent)} (apt-get "
                                   "install festvox-kallpc16k festvox-kdlpc16k "
                                   "festvox-us-slt-hts)")
    return missing


ENGINE_LICENCES = {
    "espeak": ("espeak-ng, espeak-ng-data", "GPL-3.0-or-later"),
    "flite": ("flite, libflite1 (CMU ARCTIC and diphone voices)", "Flite licence (BSD-style)"),
    "festival": ("festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts, "
                 "festlex-cmu", "Festival/FestVox licence (X11-style)"),
}
