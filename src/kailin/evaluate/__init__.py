"""kailin.evaluate"""
