"""Using a trained model: siqa.load (api), predict.py's manifests, quality maps and export."""
