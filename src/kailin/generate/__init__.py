"""kailin.generate"""
