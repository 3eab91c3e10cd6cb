"""Evaluation: Frechet distance / FID, feature extractors, image metrics, paired fidelity, shape and hue
accuracy, bootstrap intervals, latency timing and reports."""

from fastsample.eval.bootstrap import (
    FrechetInterval,
    Interval,
    bootstrap_interval,
    frechet_distance_interval,
    paired_difference_interval,
)
from fastsample.eval.extractors import (
    FeatureExtractor,
    InceptionExtractor,
    InDomainExtractor,
    ModuleExtractor,
    get_extractor,
)
from fastsample.eval.fid import compute_fid, compute_statistics, extract_features, pipeline_statistics
from fastsample.eval.fidelity import (
    FidelityReport,
    compare_fidelity,
    feature_distance,
    paired_fidelity,
    psnr,
    ssim,
)
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
from fastsample.eval.shape import (
    class_accuracy,
    colour_blind_view,
    hue_accuracy,
    predict_hues,
    predict_shapes,
    rotate_hue,
    shape_accuracy,
)
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
    "FidelityReport",
    "FrechetInterval",
    "ImageFolder",
    "InDomainExtractor",
    "InceptionExtractor",
    "InceptionV3Pool3",
    "Interval",
    "MacCounter",
    "ModuleExtractor",
    "NFECounter",
    "Statistics",
    "bootstrap_interval",
    "class_accuracy",
    "colour_blind_view",
    "compare_fidelity",
    "compare_latency",
    "compute_fid",
    "compute_statistics",
    "count_macs",
    "count_nfe",
    "extract_features",
    "feature_distance",
    "fid_from_statistics",
    "frechet_distance",
    "frechet_distance_interval",
    "generate_image_batches",
    "get_extractor",
    "hue_accuracy",
    "load_inception",
    "load_statistics",
    "measure_pipeline",
    "paired_difference_interval",
    "paired_fidelity",
    "pareto_front",
    "pipeline_statistics",
    "precision_recall",
    "predict_hues",
    "predict_shapes",
    "preprocess_for_inception",
    "psnr",
    "rotate_hue",
    "save_image_grid",
    "save_statistics",
    "shape_accuracy",
    "ssim",
    "time_function",
    "to_canonical_images",
    "write_report",
]
