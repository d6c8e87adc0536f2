"""Token-to-mel-to-waveform pipelines built on the flows of :mod:`fmjax.models`:

* :mod:`fmjax.pipelines.token2mel` -- offline inference (:func:`token2mel`);
* :mod:`fmjax.pipelines.training` -- the training losses (:func:`flow_loss`, unified / dynamic chunk training);
* :mod:`fmjax.pipelines.stream` -- streaming token-to-mel (:class:`Token2MelStream`);
* :mod:`fmjax.pipelines.vocoders` -- the streaming vocoders (HiFT, Griffin-Lim), batched over rows;
* :mod:`fmjax.pipelines.token2wav` -- streaming token-to-waveform (:class:`Token2Wav`);
* :mod:`fmjax.pipelines.common` -- the glue they share (velocity closures, condition assembly, noise, checks).

The historical module names ``fmjax.token2mel``, ``fmjax.token2mel_stream`` and ``fmjax.token2wav`` re-export them.
"""
