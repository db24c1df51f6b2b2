"""Generative models used by attacks: reference VAEs whose latent space hosts on-manifold threat models."""

from .vae import VAE, audio_feature_vae, image_vae, train_vae

__all__ = ["VAE", "image_vae", "audio_feature_vae", "train_vae"]
