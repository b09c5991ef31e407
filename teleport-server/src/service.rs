//! The service seam: what the server can serve.

use std::error::Error as StdError;
use std::future::Future;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::Body;

/// An error a service or a response body may fail with.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A `tower::Service<http::Request<Body>>` the server can run: cloneable and `Send`, answering
/// with an `http::Response` whose body is any [`http_body::Body`] (an axum `Router`, a
/// `tower::service_fn`, ...).
///
/// Implemented for every service that qualifies; there is nothing to implement by hand.
pub trait HttpService: Clone + Send + Sync + 'static {
    /// The response body.
    type ResBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// The service's error; a request that fails with one is answered with a 500.
    type Error: Into<BoxError> + Send;
    /// The future of one call.
    type Future: Future<Output = Result<Response<Self::ResBody>, Self::Error>> + Send + 'static;

    /// As [`Service::poll_ready`].
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// As [`Service::call`].
    fn call(&mut self, request: Request<Body>) -> Self::Future;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type ResBody = B;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, request: Request<Body>) -> S::Future {
        Service::call(self, request)
    }
}
