"""kailin.dataset"""
