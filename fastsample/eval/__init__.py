"""Evaluation: Frechet distance / FID, feature extractors, image metrics, latency timing and reports."""

from fastsample.eval.extractors import (
    FeatureExtractor,
    InceptionExtractor,
    InDomainExtractor,
    ModuleExtractor,
    get_extractor,
)
from fastsample.eval.fid import compute_fid, compute_statistics, extract_features, pipeline_statistics
from fastsample.eval.frechet import frechet_distance
from fastsample.eval.inception import InceptionV3Pool3, load_inception
from fastsample.eval.inputs import ImageFolder, generate_image_batches
from fastsample.eval.latency import (
    MacCounter,
    NFECounter,
    compare_latency,
    count_macs,
    count_nfe,
    measure_pipeline,
    time_function,
)
from fastsample.eval.precision_recall import precision_recall
from fastsample.eval.preprocess import preprocess_for_inception, to_canonical_images
from fastsample.eval.report import pareto_front, save_image_grid, write_report
from fastsample.eval.stats import (
    FeatureStatistics,
    Statistics,
    fid_from_statistics,
    load_statistics,
    save_statistics,
)

__all__ = [
    "FeatureExtractor",
    "FeatureStatistics",
    "ImageFolder",
    "InDomainExtractor",
    "InceptionExtractor",
    "InceptionV3Pool3",
    "MacCounter",
    "ModuleExtractor",
    "NFECounter",
    "Statistics",
    "compare_latency",
    "compute_fid",
    "compute_statistics",
    "count_macs",
    "count_nfe",
    "extract_features",
    "fid_from_statistics",
    "frechet_distance",
    "generate_image_batches",
    "get_extractor",
    "load_inception",
    "load_statistics",
    "measure_pipeline",
    "pareto_front",
    "pipeline_statistics",
    "precision_recall",
    "preprocess_for_inception",
    "save_image_grid",
    "save_statistics",
    "time_function",
    "to_canonical_images",
    "write_report",
]
