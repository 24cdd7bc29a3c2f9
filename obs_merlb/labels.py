"""Label sets shared by training, the live engine and reports.

The mapping tables say how each dataset's labels land on MERLB's heads. A
dataset label that has no emotion counterpart maps to None for that head and
is masked out of that head's loss, never guessed.
"""
from __future__ import annotations

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
VALENCE = ("negative", "neutral", "positive")
AROUSAL = ("low", "neutral", "high")
BEHAVIOURS = ("routing", "procurement", "respawning", "exploring",
              "fighting", "punching", "defending", "defeated")
# The paper's column abbreviations, in its table order.
BEHAVIOUR_ABBREV = {"routing": "Rou", "procurement": "Pro", "respawning": "Res",
                    "exploring": "Exp", "fighting": "Fig", "punching": "Pun",
                    "defending": "Def", "defeated": "Dft"}
MODALITIES = ("face", "voice", "body", "scene")
# Columns of a step mask (T, 4) / (B, T, 4), in MODALITIES order.
FACE, VOICE, BODY, SCENE = (MODALITIES.index(m) for m in ("face", "voice", "body", "scene"))
# A head's class index meaning "no label": the loss's ignore_index, and what
# scores, balance and calibration leave out.
IGNORE = -100

# Folder and file names other sets use for the same emotion.
EMOTION_ALIASES = {
    "anger": "angry", "angry": "angry", "ang": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust", "contempt": None,
    "fear": "fear", "fearful": "fear", "fea": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "hap": "happy", "joy": "happy",
    "neutral": "neutral", "neu": "neutral",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise",
}

# Valence / arousal of each basic emotion (circumplex placement, Russell 1980).
EMOTION_VA = {
    "angry": ("negative", "high"),
    "disgust": ("negative", "neutral"),
    "fear": ("negative", "high"),
    "happy": ("positive", "high"),
    "neutral": ("neutral", "neutral"),
    "sad": ("negative", "low"),
    "surprise": ("positive", "high"),
}

# RAVDESS emotion code -> (emotion, valence, arousal).
# "calm" has no basic-emotion counterpart: it trains valence/arousal only
# (neutral valence, low arousal) and is masked out of the emotion head.
RAVDESS = {
    "01": ("neutral", "neutral", "neutral"),
    "02": (None, "neutral", "low"),          # calm
    "03": ("happy", "positive", "high"),
    "04": ("sad", "negative", "low"),
    "05": ("angry", "negative", "high"),
    "06": ("fear", "negative", "high"),
    "07": ("disgust", "negative", "neutral"),
    "08": ("surprise", "positive", "high"),
}
RAVDESS_NAMES = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                 "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}

# EmoDB emotion letter -> (emotion, valence, arousal). Boredom: like RAVDESS
# calm, no basic emotion; negative-leaning but we keep valence neutral
# (bored speech in EmoDB is flat rather than unpleasant) and arousal low.
EMODB = {
    "W": ("angry", "negative", "high"),
    "L": (None, "neutral", "low"),           # boredom (Langeweile)
    "E": ("disgust", "negative", "neutral"),
    "A": ("fear", "negative", "high"),
    "F": ("happy", "positive", "high"),
    "T": ("sad", "negative", "low"),
    "N": ("neutral", "neutral", "neutral"),
}

# CREMA-D emotion code -> emotion.
CREMA_D = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
           "NEU": "neutral", "SAD": "sad"}


# ASED (Amharic) file-name emotion letter, folder names 01Neutral..05Angry.
ASED = {"n": "neutral", "f": "fear", "h": "happy", "s": "sad", "a": "angry"}
# URDU file-name emotion letter (folders Angry, Happy, Neutral, Sad).
URDU = {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}
# Korean emotional TTS corpus: the clip index (1-400) picks the emotion, in
# blocks of 100.
EMOTIONTTS_KR = ("neutral", "happy", "angry", "sad")
# nEMO (Polish) file-name emotion word.
NEMO = {"anger": "angry", "fear": "fear", "happiness": "happy", "neutral": "neutral",
        "sadness": "sad", "surprised": "surprise"}

# The emotions each acted set offers its speakers. A class a set does not
# have is masked out of the loss for that set's clips: the actor never had
# the choice, so the clip is no evidence against it. Sets not named here
# (RAVDESS, FER2013, the user's own CSVs) offer every class.
SET_EMOTIONS: dict[str, tuple[str, ...]] = {
    "emodb": ("angry", "disgust", "fear", "happy", "neutral", "sad"),
    "crema_d": tuple(sorted(CREMA_D.values())),
    "ased": tuple(sorted(ASED.values())),
    "urdu": tuple(sorted(URDU.values())),
    "emotiontts_kr": tuple(sorted(EMOTIONTTS_KR)),
    "nemo": tuple(sorted(NEMO.values())),
}

# FER+ vote columns (Barsoum et al. 2016), in its CSV's order. Contempt has
# no class here; "unknown" and "NF" (not a face) are the taggers' way of
# saying they could not label the image.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")


def emotion_targets(emotion: str | None) -> tuple[str | None, str | None, str | None]:
    """(emotion, valence, arousal) for a basic emotion name or alias."""
    if emotion is None:
        return None, None, None
    canon = EMOTION_ALIASES.get(emotion.strip().lower())
    if canon is None:
        return None, None, None
    valence, arousal = EMOTION_VA[canon]
    return canon, valence, arousal
