"""Plugins that put the gateway's voices into agent frameworks (docs/integrations.md).

``aivtuber_integrations.livekit.AIVTuberTTS`` (extra ``livekit``) and
``aivtuber_integrations.pipecat.AIVTuberTTSService`` (extra ``pipecat``) speak the gateway's
streaming protocol through :mod:`aivtuber_integrations.client`, which needs neither framework.
"""
