"""Triggers: make the stream react to the streamer's emotion (an output stage, beside overlay/).

rules.py (the config's `[[triggers]]`, when a rule fires), actions.py (OBS
requests and the other apps), streamerbot.py, vtube_studio.py, webhook.py
(the clients), runner.py (the engine sink and its worker thread). See
README "Make the stream react".
"""
