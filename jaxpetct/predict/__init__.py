"""Reports for new patients from a trained model: `python -m jaxpetct.predict --model EXPORT --study PATH --out DIR`.

`core` (Predictor: an exported or in-memory model, compiled once; the build's ingestion and the records' encoding,
eval's generation), `inputs` (folders, files and zip uploads, unpacked safely), `run` (a folder of studies in, one
folder of report.json / lesions.json / viewer.html per study out). `serve` puts a local web page in front of it.
"""
from jaxpetct.predict.core import Prediction, PredictError, Predictor, Preprocess, preprocess_of
from jaxpetct.predict.inputs import InputError
from jaxpetct.predict.run import PredictSummary, predict_path, write_study

__all__ = ["InputError", "Prediction", "PredictError", "PredictSummary", "Predictor", "Preprocess", "predict_path",
           "preprocess_of", "write_study"]
