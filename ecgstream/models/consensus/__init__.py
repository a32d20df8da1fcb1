"""In-window consensus detector: each part of a window against the window's own typical beat.

ECG repeats itself. Inside one window (10 s, about ten beats) the typical cycle of *this*
patient is known from the window itself, so a part that differs from it is anomalous no matter
how the patient differs from other patients (docs/model-consensus.md). Without R-peak detection:
segments of about one beat every 0.1 s, each described by its sorted median-centred values
(:mod:`.descriptor`), scored against the window's median descriptor. Optional terms, each its
own module: the noise floor (:mod:`.noise`), the neighbours of a segment holding less than the
consensus (:mod:`.descriptor`), the rhythm term (:mod:`.rhythm`), the population reference for
abnormalities present in every beat (:mod:`.population`, :mod:`.spectrum`), the
nearest-neighbour reference for generic series (:mod:`.reference`) and the learned score refiner
(:mod:`ecgstream.models.refiner`). :mod:`.config` declares and validates every setting;
:mod:`.stream` is the torch side of the stream step exported beside the main graph.

>>> import torch
>>> model = SegmentConsensus(ConsensusConfig(n_leads=1, window=400, segment=40, stride=5))
>>> point, window = model(torch.randn(2, 1, 400))
>>> tuple(point.shape), tuple(window.shape)
((2, 400), (2,))
"""

from ecgstream.models.consensus.config import ConsensusConfig, spectrum_sizes
from ecgstream.models.consensus.model import SegmentConsensus
from ecgstream.models.consensus.stream import StreamStep, stream_layout

__all__ = ["ConsensusConfig", "SegmentConsensus", "StreamStep", "spectrum_sizes", "stream_layout"]
