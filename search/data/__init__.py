"""FER2013 data layer: load the CSV or the Kaggle image folders, cache, split, label-map, pipeline.

    data = load_fer2013("fer2013.csv.gz", labels="fer4").subset(0.25)
    train = make_dataset(data.train, batch_size=64, training=True, augment=Augment(rotation=0.05))

TensorFlow is only imported when ``make_dataset`` runs.
"""

from __future__ import annotations

from search.data.labels import LABEL_MAPS, LabelMap
from search.data.loading import FERData, Split, load_fer2013, load_raw, resolve_data_path
from search.data.pipeline import Augment, TrainingPipeline, augment_batch, make_dataset
from search.data.schema import EMOTIONS, IMAGE_SIZE, SPLIT_NAMES, USAGES, DataError, RawFER

__all__ = [
    "EMOTIONS", "IMAGE_SIZE", "USAGES", "SPLIT_NAMES", "DataError", "RawFER", "LabelMap",
    "LABEL_MAPS", "Split", "FERData", "resolve_data_path", "load_raw", "load_fer2013", "Augment",
    "make_dataset", "TrainingPipeline", "augment_batch",
]
